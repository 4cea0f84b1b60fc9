// placeholder: the dashboard page replaces it
