"""Examples; a package so pools.yaml's ``code: [examples]`` ships ``examples.rag`` to every pool."""
