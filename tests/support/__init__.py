"""Code shared by a unit test module and its integration half."""
