"""What the tool learns from a user's files by reading them, never importing or running them (no torch).

`safety` decides whether importing a file is safe (its top level only declares things), `outline` lists the
models a file declares (classes, factories, instances, building blocks), `project` follows local imports
(does a file reach torch? is every local module it imports safe too?) with one cache per run.
"""
