"""Files: local or gs:// storage and the workdir's layout."""
