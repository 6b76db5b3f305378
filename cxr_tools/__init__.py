"""cxr-tools: few-shot chest X-ray classification from the command line.

Heavy libraries (torch, cv2, h5py, sklearn, learn2learn) are imported inside the functions that need
them, never at package import, so that ``cxr --help`` stays fast in shell scripts.
"""

__version__ = "0.3.0"
