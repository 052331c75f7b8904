# Copyright (c) 2026 the vnetfw authors
# MIT License (see https://opensource.org/license/mit)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: facts
short_description: vnetfw's status as facts
description:
  - Reads C(vnetfw status) (backend, profile, the active networks and whether the live
    firewall matches them) into the fact C(vnetfw). Changes nothing.
  - Drift is a fact here, not a failure (C(vnetfw status) exits 1 on it); assert on
    C(vnetfw.in_sync) where it matters.
version_added: 0.1.0
author: The vnetfw authors (@vnetfw)
extends_documentation_fragment:
  - vnetfw.vnetfw.common
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: It changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
"""

EXAMPLES = r"""
- name: Read vnetfw's status
  vnetfw.vnetfw.facts:
  become: true

- name: Every hypervisor's rules are in place
  ansible.builtin.assert:
    that: ansible_facts.vnetfw.in_sync
    fail_msg: "{{ ansible_facts.vnetfw.drift | map(attribute='text') | list }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    vnetfw:
      description:
        - vnetfw's status document (its docs/json.md, "status").
        - C(in_sync), C(desired), C(drift) (change objects), C(networks) (name, mode,
          bridge, subnets, rules), C(backend), C(profile), C(prefix), C(state_dir).
      type: dict
      returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vnetfw.vnetfw.plugins.module_utils.vnetfw import COMMON_ARGS, Vnetfw


def main():
    module = AnsibleModule(argument_spec=dict(**COMMON_ARGS), supports_check_mode=True)
    status = Vnetfw(module).run("status", ok=(0, 1))[1]     # 1: drift, which is a fact here
    module.exit_json(changed=False, ansible_facts=dict(vnetfw=status))


if __name__ == "__main__":
    main()
