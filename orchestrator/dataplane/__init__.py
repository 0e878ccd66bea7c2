"""The data plane: the router (calls go straight to pool actors) and the handles callers hold."""
