"""`flask dev`: the development stack and its embedded broker."""
