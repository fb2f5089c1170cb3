"""Accelerated functions: FaaS users' functions that call accelerated operations through vAccel."""
