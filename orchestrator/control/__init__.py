"""The control plane: a thin coordinator actor over the supervisor, sessions, routing table, jobs and store.

``launch.start()`` brings it up; nothing on the call path goes through it.
"""
