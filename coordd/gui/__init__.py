"""Everything of the gui transport, and nothing else imports pyautogui or Xlib.

- config.py: the [gui] section and the gui agent, coordinates from gui.coords_file, their checks
- owner.py: the one thread that drives the mouse, the keyboard and the clipboard
- clipboard.py: the X CLIPBOARD coordd serves itself (python-xlib)
- transport.py: the gui transport: click, paste, submit
- requests.py: the `onboard` and `pointer` requests

This package imports none of them: a daemon without gui agents loads no GUI code.
"""
