"""Registry engine: the real work of this app, with no Django import (see DESIGN.md)."""
