"""The run folder: file names, atomic writes, locks, figures and what the libraries print. Imports no other station."""
