# expect: cell-timeout, timeout
# ruff: noqa -- written as a student would: this is the attack, not project code
# Never return: a grader without a wall-clock limit waits forever for the class.
while True:
    pass
