"""Adaptive storage: an S3 gateway whose objects are erasure coded across locations (seed section 4)."""
