"""Thin adapters over Linux interfaces that are not the firewall: D-Bus (``dbus``).

Each module wraps one interface behind the few calls vnetfw needs and says in its docstring
what it promises; none of them is imported on the hot paths (``--help``, ``status``,
``apply`` without firewalld), so their dependencies cost nothing there.
"""
