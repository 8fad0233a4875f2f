"""Torch-free pieces shared by the host and the device: errors, paths, atomic writes, files, images, configuration."""
