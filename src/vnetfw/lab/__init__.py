"""The lab: a network-namespace sandbox that proves the firewall with real packets.

- ``netns``: guarded namespace handles (never the namespace this process runs in) with
  cleanup at exit and on SIGTERM/SIGHUP.
- ``topology``: ``Lab``, the hypervisor / bridges / guests / upstream namespaces.
- ``agent``: the standalone listener/sender run inside the namespaces.
- ``probe``: listeners, parallel senders, what each probe observed.
- ``policy``: pure; what docs/design.md §4 says each pair must observe.
- ``matrix``: probe every pair, judge it against the policy.
- ``demo`` / ``report``: ``vnetfw demo`` and its ``rich`` tables.

Importing this package runs nothing; only entering a ``Lab`` creates namespaces.
"""
