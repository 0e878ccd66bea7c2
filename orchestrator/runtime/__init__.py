"""What runs inside each pool actor: the WorkerHost (``host``), op execution (``execution``), the session turnstile."""
