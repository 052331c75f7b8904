# Copyright (c) 2026 the vnetfw authors
# MIT License (see https://opensource.org/license/mit)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: network
short_description: A virtual network's firewall rules, present or absent, with vnetfw
description:
  - Starts or updates one network's firewall rules from a definition (C(vnetfw apply)), or
    removes them (C(vnetfw remove)), in one atomic step.
  - A definition is libvirt network XML (as C(virsh net-dumpxml) prints it) or vnetfw's TOML,
    told apart by its content.
  - Other active networks are left alone; to make the active set exactly a folder, use
    M(vnetfw.vnetfw.sync).
version_added: 0.1.0
author: The vnetfw authors (@vnetfw)
extends_documentation_fragment:
  - vnetfw.vnetfw.common
options:
  name:
    description:
      - The network's name. A definition must define exactly this network.
    type: str
    required: true
  definition:
    description:
      - The definition's text (libvirt XML or TOML), e.g. from C(lookup('file', ...)) or a
        template.
      - Mutually exclusive with O(src).
    type: str
  src:
    description:
      - A definition file on the managed host.
      - Mutually exclusive with O(definition).
    type: path
  state:
    description:
      - V(present) starts or updates the network, V(absent) removes its rules.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: vnetfw's C(--dry-run) computes the changes against the live firewall.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - The network's live rules before and after.
      - In check mode, the changes C(--dry-run) reports, one line each.
"""

EXAMPLES = r"""
- name: The default libvirt network, from a file on the host
  vnetfw.vnetfw.network:
    name: default
    src: /etc/libvirt/qemu/networks/default.xml
  become: true

- name: A lab network, from a template on the controller
  vnetfw.vnetfw.network:
    name: lab
    definition: "{{ lookup('template', 'lab.toml.j2') }}"
    backend: nftables
  become: true

- name: Gone
  vnetfw.vnetfw.network:
    name: oldlab
    state: absent
  become: true
"""

RETURN = r"""
changed:
  description: The live firewall changed (in check mode, would change).
  returned: always
  type: bool
changes:
  description:
    - Every change made (in check mode, that would be made), as vnetfw reports it.
    - Each has C(network), C(family), C(where), C(problem), C(repair), C(detail) and C(text).
  returned: always
  type: list
  elements: dict
  sample:
    - network: lab
      family: ipv4
      where: filter VNETFW_FWI
      problem: missing
      repair: add
      detail: rule out vlab0 to 10.77.0.0/24 state established,related accept
      text: "ipv4 filter VNETFW_FWI: missing rule ... (network lab)"
backend:
  description: The backend vnetfw used.
  returned: always
  type: str
  sample: nftables
report:
  description: vnetfw's whole report (its docs/json.md, "report").
  returned: unless O(state=absent) and the network was not active
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vnetfw.vnetfw.plugins.module_utils.vnetfw import (
    COMMON_ARGS, Vnetfw, prepared_diff)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            definition=dict(type="str"),
            src=dict(type="path"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            **COMMON_ARGS),
        mutually_exclusive=[("definition", "src")],
        required_if=[("state", "present", ("definition", "src"), True)],
        supports_check_mode=True,
    )
    p = module.params
    vnetfw = Vnetfw(module)
    name = p["name"]

    if p["state"] == "absent":
        if name not in vnetfw.active():
            module.exit_json(changed=False, changes=[], backend=None)
        verb, args, data = "remove", [name], None
    else:
        verb = "apply"
        args, data = ([p["src"]], None) if p["src"] else (["-"], p["definition"].encode())

    # Always first the dry run: it validates the definition and names its networks, and
    # says whether anything would change.
    dry = vnetfw.run(verb, "--dry-run", *args, data=data)[1]
    if verb == "apply" and dry["networks"] != [name]:
        module.fail_json(msg="the definition defines %s, not exactly the network %r"
                         % (", ".join(repr(n) for n in dry["networks"]) or "no network",
                            name))
    result = dict(changed=dry["changed"], changes=dry["changes"], backend=dry["backend"],
                  report=dry)
    if module.check_mode or not dry["changed"]:
        if module._diff and dry["changed"]:
            result["diff"] = dict(prepared=prepared_diff(dry["changes"]))
        module.exit_json(**result)

    before = vnetfw.rules(name) if module._diff else None
    rep = vnetfw.run(verb, *args, data=data, ok=(0, 6))[1]     # 6: landed, a hook failed
    result.update(changed=rep["changed"], changes=rep["changes"], backend=rep["backend"],
                  report=rep)
    if module._diff:
        result["diff"] = dict(before=before, after=vnetfw.rules(name),
                              before_header="%s: live rules before" % name,
                              after_header="%s: live rules after" % name)
    for f in rep["hook_failures"]:
        module.warn("hook failed: %s" % f)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
