from leadrelay.cli import main

main()
