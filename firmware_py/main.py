# main.py: runs after boot.py on every reset. Serves the pain-report protocol on the console.
import app

app.main()
