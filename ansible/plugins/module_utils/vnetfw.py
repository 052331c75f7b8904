# Copyright (c) 2026 the vnetfw authors
# MIT License (see https://opensource.org/license/mit)
"""Running the vnetfw command for the collection's modules.

The modules hold no firewall logic: each asks vnetfw (``--json``, schema_version 1, see
vnetfw's docs/json.md) and reports what it says. This is the one place that builds the
command line from the common options and turns vnetfw's JSON, including its error
document, into results or a failure.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

SCHEMA_VERSION = 1
BACKENDS = ["auto", "nftables", "iptables", "iptables-nft", "iptables-legacy"]

COMMON_ARGS = dict(
    backend=dict(type="str", choices=BACKENDS),
    profile=dict(type="str"),
    state_dir=dict(type="path"),
    netns=dict(type="str"),
    executable=dict(type="path"),
)

# Where pipx and a virtualenv install vnetfw (docs/install.md), besides $PATH.
OPT_DIRS = ["/usr/local/bin", "/opt/vnetfw/bin"]
# A change's repair, as a line of a prepared diff (check mode: there is no "after" to read).
MARK = {"create": "+", "add": "+", "insert": "+", "delete": "-"}


class Vnetfw(object):
    def __init__(self, module):
        self.module = module
        p = module.params
        exe = p["executable"] or module.get_bin_path("vnetfw", required=True,
                                                     opt_dirs=OPT_DIRS)
        self.argv = [exe]
        for opt in ("backend", "profile", "state_dir", "netns"):
            if p.get(opt) is not None:
                self.argv += ["--" + opt.replace("_", "-"), p[opt]]

    def run(self, *args, **kw):
        """vnetfw ARGS --json (stdin: ``data``); returns (exit status, document). vnetfw's
        error document, an exit status not in ``ok`` or output that is no document fail the
        module with vnetfw's own message."""
        data, ok = kw.get("data"), kw.get("ok", (0,))
        argv = self.argv + list(args) + ["--json"]
        rc, out, err = self.module.run_command(argv, data=data, binary_data=True)
        try:
            doc = json.loads(out)
        except ValueError:
            self.module.fail_json(msg="vnetfw %s printed no JSON (exit %d): %s"
                                  % (args[0], rc, err.strip() or out.strip()),
                                  rc=rc, cmd=argv, stdout=out, stderr=err)
        if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
            self.module.fail_json(msg="vnetfw %s: expected a document with schema_version %d"
                                  % (args[0], SCHEMA_VERSION), rc=rc, cmd=argv, stdout=out)
        if "error" in doc:
            self.module.fail_json(msg=doc["error"].get("message") or "vnetfw failed",
                                  error=doc["error"], rc=rc, cmd=argv, stderr=err)
        if rc not in ok:
            self.module.fail_json(msg="vnetfw %s exited %d: %s" % (args[0], rc, err.strip()),
                                  rc=rc, cmd=argv, stdout=out, stderr=err)
        return rc, doc

    def active(self):
        """The names of the active networks."""
        return [n["name"] for n in self.run("list")[1]["networks"]]

    def rules(self, name):
        """The live rules of network ``name`` (``vnetfw show``), one line each: the "before"
        and "after" of a diff. Empty when it is not active."""
        if name not in self.active():
            return ""
        doc = self.run("show", name, ok=(0, 1))[1]      # 1: its rules drifted; still shown
        return "".join("%s %s %s: %s\n" % (r["family"], r["table"], r["chain"], r["rule"])
                       for r in doc["rules"])


def prepared_diff(changes):
    """A report's changes as diff lines: + what would be created or added, - what would be
    deleted, ~ what would be moved, replaced or rebuilt (vnetfw's own words for each)."""
    return "".join("%s %s\n" % (MARK.get(c.get("repair"), "~"), c["text"]) for c in changes)
