"""vnetfw: firewall manager for Linux virtual networks.

Data flows one way: definitions (``sources``) -> validated model (``model``) -> pure plan
(``plan``) -> backend-neutral ruleset (``ruleset``) -> backend that alone touches the system
(``backends``) -> engine (state, lock, atomic change) -> CLI.
"""

__version__ = "0.1.0"
