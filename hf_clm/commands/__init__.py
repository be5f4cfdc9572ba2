"""The command line: one module per hf-clm command, each parsing its arguments and calling its station."""
