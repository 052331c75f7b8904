"""Thin adapters over Linux interfaces: D-Bus (``dbus``) and nf_tables' netlink messages
(``netlink``).

Each module wraps one interface behind the few calls vnetfw needs and says in its docstring
what it promises; none of them is imported on the hot paths (``--help``, ``status``,
``apply`` without firewalld), so their dependencies cost nothing there.
"""
