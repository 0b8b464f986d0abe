"""Against real peers the tests start (DCMTK, lrzsz, FFmpeg, pynetdicom as a
hostile or special peer) and the gateway run as a real process."""
