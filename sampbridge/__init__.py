"""sampbridge: the Chandra Source Catalog one click away in TOPCAT, DS9 and Aladin, over SAMP."""

__version__ = "0.1.0"
