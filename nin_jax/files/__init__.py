"""Files: local or gs:// storage, the workdir layout, trained runs."""
