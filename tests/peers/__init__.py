"""Real-peer (TOPCAT, DS9, Aladin, JSAMP) test harness for sampbridge; see harness.py."""
