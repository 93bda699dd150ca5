"""The RL step: collect one complete trajectory (`collector`), then update the policy on it (`updater`).

Modules are imported by their full names (`clipo.rl.collector`, ...), not from here, so that the
ground-floor helpers they use never import back up.
"""
