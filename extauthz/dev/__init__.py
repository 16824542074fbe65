"""The dev room: everything that runs the local stack (make, pytest and bench share it)."""
