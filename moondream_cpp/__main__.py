"""`python -m moondream_cpp ...`: the moondream-cpp command, for environments without its console script."""
from moondream_cpp.cli.main import main

main()
