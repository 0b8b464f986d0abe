"""Where images enter: the exam, capture, import, device-sent and inbound images."""
