# modules are imported here so that they register
