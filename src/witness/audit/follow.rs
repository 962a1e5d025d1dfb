//! Following a JSON-lines audit log file (placeholder; being written).
