from whoharry.cli import main

main()
