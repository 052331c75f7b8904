"""vnetfw benchmarks: control plane (issue 5), data plane (issue 3), start-up, memory, profile.

Run from the repository root as root: ``python -m benchmarks`` (``--quick`` for a short run,
``--help`` for sections and options). Everything runs in throwaway network namespaces this
package creates and deletes; the host's own firewall is never touched. See README.md.
"""
