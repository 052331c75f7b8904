"""Thin adapters over Linux interfaces: D-Bus (``dbus``) and nf_tables' netlink messages
(``netlink``).

Each module wraps one interface behind the few calls vnetfw needs and says in its docstring
what it promises. ``netlink`` is pure and needs only ``struct`` (every command that reads
the generation imports it); ``dbus`` loads jeepney only once a bus is asked, so ``--help``,
``status`` and an ``apply`` without firewalld never pay for it.
"""
