"""The review page: files a ``review`` action set aside wait here for a person's label (see app.py)."""
