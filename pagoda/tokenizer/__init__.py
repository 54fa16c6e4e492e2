"""Generated gRPC code lives here (`make protos`)."""
