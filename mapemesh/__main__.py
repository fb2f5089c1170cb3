from mapemesh.cli import main

main()
