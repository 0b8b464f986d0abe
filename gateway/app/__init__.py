"""The application: the command line, the `run` service, the demo and the control socket."""
