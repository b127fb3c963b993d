from dynod.cli import main

main()
