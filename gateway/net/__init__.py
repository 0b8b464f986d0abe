"""The network side: associations, C-ECHO, C-STORE. Works from the queue's
interface; knows nothing of drivers or the UI."""
