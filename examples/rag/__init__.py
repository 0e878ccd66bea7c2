"""A retrieval-augmented DSPy program, its corpus, data and metric (see README "Your own DSPy programs")."""
