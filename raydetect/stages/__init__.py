"""Ray Data stages: readers, the model actors, resource planning, and the one job runner."""
