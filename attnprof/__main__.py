"""python -m attnprof"""

from attnprof.cli.app import main

if __name__ == "__main__":
    main()
