"""The ``edgedd`` command: the app and its conventions, the host commands, the device commands."""
