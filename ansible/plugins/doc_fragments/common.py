# Copyright (c) 2026 the vnetfw authors
# MIT License (see https://opensource.org/license/mit)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  backend:
    description:
      - The firewall backend (C(vnetfw --backend)).
      - Default C(auto), which keeps the backend the active networks were applied with,
        else picks nftables when the kernel takes it.
    type: str
    choices: [auto, nftables, iptables, iptables-nft, iptables-legacy]
  profile:
    description:
      - The rule profile (C(vnetfw --profile)), V(default) or V(libvirt).
      - Default the profile of the active networks, else V(default).
    type: str
  state_dir:
    description:
      - vnetfw's desired-state directory (C(vnetfw --state-dir)).
      - Default C(/var/lib/vnetfw), or C(/var/lib/vnetfw/netns/NETNS) with O(netns).
    type: path
  netns:
    description:
      - Work inside this network namespace (C(vnetfw --netns), a name in C(/run/netns)).
    type: str
  executable:
    description:
      - The vnetfw command on the managed host.
      - Default C(vnetfw) on E(PATH), C(/usr/local/bin) or C(/opt/vnetfw/bin).
    type: path
requirements:
  - vnetfw on the managed host (C(pipx install vnetfw)), run as root.
notes:
  - The modules call the vnetfw command with C(--json) and change nothing themselves; every
    change is vnetfw's one atomic step, which lands whole or leaves the firewall as it was.
"""
