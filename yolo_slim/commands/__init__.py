"""The command surface: one `yolo-slim COMMAND` (commands/main.py) over every tool's main, and
here the mains of the commands that are also top-level scripts (train_sparse.py,
prune_channels.py, ... import theirs from these modules). The top layer: it may import any
package, none imports it."""
