"""The service side of recsys-online: the command line, and the Faust worker to come."""
