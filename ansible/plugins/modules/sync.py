# Copyright (c) 2026 the vnetfw authors
# MIT License (see https://opensource.org/license/mit)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: sync
short_description: Make vnetfw's active networks exactly the ones defined in a file or folder
description:
  - C(vnetfw sync) starts or updates every network defined under O(src) and removes every
    other active network, in one atomic change. A bad definition anywhere changes nothing.
version_added: 0.1.0
author: The vnetfw authors (@vnetfw)
extends_documentation_fragment:
  - vnetfw.vnetfw.common
options:
  src:
    description:
      - Definition files or folders on the managed host (libvirt XML or TOML).
    type: list
    elements: path
    required: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: vnetfw's C(--dry-run) computes the changes against the live firewall.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - The active networks and their rules before and after.
      - In check mode, the changes C(--dry-run) reports, one line each.
"""

EXAMPLES = r"""
- name: Copy the fleet's network definitions
  ansible.builtin.copy:
    src: networks/
    dest: /etc/vnetfw/networks/
    mode: "0644"
  become: true

- name: The active networks are exactly those
  vnetfw.vnetfw.sync:
    src: /etc/vnetfw/networks
  become: true
"""

RETURN = r"""
changed:
  description: The live firewall changed (in check mode, would change).
  returned: always
  type: bool
networks:
  description: The networks the definitions define, which are now (or would be) the active set.
  returned: always
  type: list
  elements: str
  sample: [default, lab]
removed:
  description: The networks that were (or would be) removed.
  returned: always
  type: list
  elements: str
changes:
  description: Every change made (in check mode, that would be made), as vnetfw reports it.
  returned: always
  type: list
  elements: dict
backend:
  description: The backend vnetfw used.
  returned: always
  type: str
report:
  description: vnetfw's whole report (its docs/json.md, "report").
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vnetfw.vnetfw.plugins.module_utils.vnetfw import (
    COMMON_ARGS, Vnetfw, prepared_diff)


def main():
    module = AnsibleModule(
        argument_spec=dict(src=dict(type="list", elements="path", required=True),
                           **COMMON_ARGS),
        supports_check_mode=True,
    )
    vnetfw = Vnetfw(module)
    before_names = vnetfw.active()
    dry = vnetfw.run("sync", "--dry-run", *module.params["src"])[1]
    removed = [n for n in before_names if n not in dry["networks"]]
    result = dict(changed=dry["changed"], changes=dry["changes"], backend=dry["backend"],
                  networks=dry["networks"], removed=removed, report=dry)
    if module.check_mode or not dry["changed"]:
        if module._diff and dry["changed"]:
            result["diff"] = dict(prepared=prepared_diff(dry["changes"]))
        module.exit_json(**result)

    before = "".join(vnetfw.rules(n) for n in before_names) if module._diff else None
    rep = vnetfw.run("sync", *module.params["src"], ok=(0, 6))[1]   # 6: landed, a hook failed
    result.update(changed=rep["changed"], changes=rep["changes"], backend=rep["backend"],
                  networks=rep["networks"], report=rep)
    if module._diff:
        result["diff"] = dict(before=before,
                              after="".join(vnetfw.rules(n) for n in vnetfw.active()),
                              before_header="active networks' rules before",
                              after_header="active networks' rules after")
    for f in rep["hook_failures"]:
        module.warn("hook failed: %s" % f)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
