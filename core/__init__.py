"""The bottom layer: small tools with no project imports — latest-value hand-offs between
threads (`slots`), named worker threads (`workers`), rate meters (`meters`) and credential
redaction (`redact`)."""
